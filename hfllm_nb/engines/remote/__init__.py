"""The remote engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, transformers serve)."""
