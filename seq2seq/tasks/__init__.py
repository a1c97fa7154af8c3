"""Tasks: translation and captioning runs (data, model, training, test scores) and the
translator and captioner that serve a trained model to the tools."""
