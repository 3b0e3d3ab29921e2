"""Where this plugin meets fairseq 0.12 and the CPU: the documented fixes to fairseq (``fairseq_fixes``),
the glibc allocator setting for CPU training (``cpu_allocator``) and the ``d2v-hydra-train`` launcher
(``launch``)."""
