"""The connection factory: a ``LockStore`` for a ``StoreConfig``."""

from __future__ import annotations

import importlib

from ticketlock_server.config import ConfigError, StoreConfig
from ticketlock_server.stores.base import LockStore, methods_without_epoch
from ticketlock_server.stores.in_memory import InMemoryLockStore

__all__ = ["LockStore", "create_store"]


def create_store(config: StoreConfig) -> LockStore:
    if config.kind == "in_memory":
        return InMemoryLockStore()
    if config.kind == "redis":
        from ticketlock_server.stores.redis_store import create_redis_store

        return create_redis_store(config)
    assert config.class_path is not None
    return _load_custom(config)


def _load_custom(config: StoreConfig) -> LockStore:
    """Load ``package.module.Class`` like Rasa does and pass it ``endpoint_config=``."""
    assert config.class_path is not None
    module_name, _, class_name = config.class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"lock_store.type {config.class_path!r}: cannot load that class ({error})"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, LockStore)):
        raise ConfigError(
            f"lock_store.type {config.class_path!r} is not a subclass of "
            "ticketlock_server.stores.base.LockStore"
        )
    if missing := methods_without_epoch(cls):
        raise ConfigError(
            f"lock_store.type {config.class_path!r}: {', '.join(missing)} must accept "
            "epoch= (see ticketlock_server.stores.base.LockStore)"
        )
    try:
        return cls(endpoint_config=config.endpoint)
    except Exception as error:
        raise ConfigError(
            f"lock_store.type {config.class_path!r} failed to start: {error}"
        ) from None
