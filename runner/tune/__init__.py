"""The Ray ring: the only place that imports ray. `runner run` (experiment) starts or reaches Ray
(cluster), runs a Tune grid (tuner) of trials (trial), and bridges results to the MLflow ring and the
terminal (callbacks)."""
