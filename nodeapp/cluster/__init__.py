"""The cluster: membership, control requests, the reconciler, dead letters, the cluster view."""
