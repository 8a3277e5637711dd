"""Video-level evaluation of generated sign clips: hand tracking, back-translation, metrics."""
