"""seq2seq: recurrent encoder-decoder models for translation and image captioning.

One decoder (:mod:`seq2seq.models.decoder`) and one search (:mod:`seq2seq.search`) serve every
task; encoders (:mod:`seq2seq.models.encoders`) turn an input into a :class:`~seq2seq.models.memory.Memory`.
"""

__version__ = "0.1.0"
