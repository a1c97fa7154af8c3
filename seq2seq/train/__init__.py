"""Training: the loop shared by every task (:mod:`seq2seq.train.trainer`), its schedules,
checkpoints, and the gradient-flow probe."""
