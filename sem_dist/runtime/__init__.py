"""What every layer uses and no layer owns: the machine (devices, kernels, the memory allocator), the seeds
(per-sample and per-step random streams) and the console's progress bars."""
