"""seektune.engine: what every stage shares: the run folder, checkpoints, the trainer mixin, losses."""
