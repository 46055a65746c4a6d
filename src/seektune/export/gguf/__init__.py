"""GGUF + Ollama export (issue 19): llama.cpp's own converter, run offline, then checked.

tools.py installs/locates the converter, convert.py runs it, check.py compares the GGUF with the
merged model, modelfile.py writes the Ollama Modelfile, gotemplate.py renders its template for the
self-check, pipeline.py ties them together for `seektune export --format gguf`.
"""
