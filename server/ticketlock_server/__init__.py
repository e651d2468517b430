"""The ticketlock server: the LockService over pluggable lock stores."""
