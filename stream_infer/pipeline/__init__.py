"""One poll's records, in the order they flow: decode -> ingest (dead letters, admission,
windows, hand-off) -> batcher -> worker (gather, engine, scatter) -> sink; the checkpoint (the
commit path) and the rebalancer close the loop. Each stage gets its collaborators explicitly and
never calls back into the service."""
