"""The training batch contract: the arrays every input pipeline yields and the train step reads.

Each is ``[batch, seq_len]``: ``tokens`` (int32 inputs), ``targets`` (the next token of each
position), ``positions`` (within its segment), ``segment_ids`` (0 = padding; a token attends only
within its segment) and ``loss_mask`` (1.0 where the target is trained on). Standard library only,
so the train step and the configs never import an input pipeline to know it.
"""

CONTRACT_KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")
