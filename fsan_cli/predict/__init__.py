"""From a checkpoint and (video, sentence) pairs to ranked moments: the Predictor and the span prior."""
