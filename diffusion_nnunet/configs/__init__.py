"""Where training and inference meet: the typed configs and the trainer registry.

`training_config` (TrainingConfig and its sections), `sampling_config` (SamplingConfig, the
prediction's sampler settings) and `trainer_registry` (the `-tr` names) import nothing of
`training` or `inference`: both sit above this package and meet only through it.
"""
