"""Network policy (step 5): Calico selectors, the policy model, the policy engine and enforcer.

Everything here is sans-IO. See docs/contracts-policy.md.
"""
