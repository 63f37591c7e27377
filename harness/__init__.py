from harness.cluster import pickle_module_subclasses_by_name, quiet_sacct_bypass

# Before any launcher runs: submitit must be able to pickle the task, and stay quiet
# about a cluster without accounting (see harness/cluster.py).
pickle_module_subclasses_by_name()
quiet_sacct_bypass()
