"""Speech recognisers (`SpeechRecognizer` backends): `pocketsphinx` (CPU, the model ships in the wheel, words
with times) and `whisper` (transformers, a hub id or local checkpoint, phrases with times). Picked by
`models.asr` through `r3tasks.models.registry`; each module imports its engine inside functions only."""
