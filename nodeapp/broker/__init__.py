"""NATS and JetStream: the connection, the resources (streams, consumer, buckets), KV reads."""
