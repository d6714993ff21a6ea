"""Scale-out: static shards of a batch, torchrun/accelerate ranks, Ray Data pipelines and several devices
for one image. Concurrent processes on one DEST share work through claims (``io/claims.py``); nothing
here schedules work itself."""
