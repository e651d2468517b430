"""Generated protobuf and gRPC stubs of ``ticketlock.v1`` (do not edit; see scripts/gen_protos.py)."""
