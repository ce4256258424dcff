"""Node VMs (kind ``node``): a Linux or Windows worker with a kubelet (see :mod:`.kubelet`)."""
