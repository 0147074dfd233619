"""A trained model put to use: restored from its workdir to predict and evaluate (`inference`,
behind `cnn_jax.load`), exported as StableHLO or ONNX (`export`, with `jaxpr_to_onnx`), and the
loader shipped beside an export, which runs without cnn_jax (`exported_model`)."""
