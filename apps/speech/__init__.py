"""Speech recognition app (tfattn): data layer so far; front end and model to come.

Data: `apps.speech.data.load_speech_data` (LJSpeech layout, transcript CSV, TFDS),
`apps.speech.pipeline.make_pipeline` (duration buckets, augmentation), and the corpus
generator `data/make_speech_corpus.py`.
"""
