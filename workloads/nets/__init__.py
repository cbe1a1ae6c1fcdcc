"""Plain-torch model definitions for the workloads (imported only inside `Workload.build`)."""
