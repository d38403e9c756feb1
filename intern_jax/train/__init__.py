"""Training: configs, optimizer, the jitted train step, the loop, checkpoints and metrics.

Pretraining and fine-tuning share all of it: fine-tuning passes its own trainable tree,
frozen tree and ``assemble`` function into ``make_train_step`` / ``run_training``.
"""
