"""The math of Transcoder Atlas: plain PyTorch/numpy, no Dagster, DuckDB or Streamlit.

Modules: model (load a model as a TransformerBridge), corpus (text -> token contexts), activations
(harvest MLP in/out), transcoder (the module and its file format), train, evals, features (mining),
token_effects, edges (weight-based circuits), attribution (graphs for prompts).
"""
