"""From a user's video files to clip features: decoding, the CLIP encoder, extraction, the extractor's record."""
