"""Kubernetes API clients for the VMs (kubelet, kube-proxy, controllers): see ``client``."""
