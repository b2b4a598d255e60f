"""Ready jobs built on a run: job specs, nightly incremental runs, synthetic triplets, Ray job
submission, and captioning a finished run as a separate stage."""
