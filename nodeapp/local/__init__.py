"""Running orderflow on one machine: the nats-server binary, child processes, ``orderflow up``."""
