"""The VM runtime: an asyncio (uvloop) process around a sans-IO netstack.

Public surface: :class:`VM` (the base of every VM kind, registered with
:func:`register_kind`), :class:`VMConfig`, the asyncio-style network API
(:class:`AsyncStack`, :class:`NetAPI`), and the registries of tools and apps.
"""

from .runtime import VM, VM_KINDS, ConfigError, VMConfig, register_kind, vm_class
from .streams import AsyncStack, NetAPI, PingError, PingReply

__all__ = [
    "VM", "VM_KINDS", "AsyncStack", "ConfigError", "NetAPI", "PingError", "PingReply", "VMConfig",
    "register_kind", "vm_class",
]
