"""The demo extractors (the `demo` models preset, vprlib.models.zoo): the paper's segmenter, depth estimator and
inpainter in small configurations, trained on the synthetic city with Ray Train (`segmenter`, `depth`, `inpainter`:
families of vprlib.train), exported as safetensors (`export`) and measured on held-out captures (`evaluate`);
`jobs/train_demo.py` runs it all."""
