"""fairseq's bundled data2vec models (the reference), for parity tests and benchmarks.

``runner`` holds every workaround the reference needs on this stack and runs it in a process of its own;
``*_config`` hold the tiny architectures and fixed batches both implementations are given.
"""
