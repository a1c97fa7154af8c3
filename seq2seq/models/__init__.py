"""Models: the text and image encoders, attention, the one shared decoder, and the model that composes them."""
