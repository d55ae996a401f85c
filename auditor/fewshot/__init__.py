"""Few-shot (meta-learning) auditing: fixed episode sets, ProtoNet and MAML learners, task- and instance-level
influence (after Ren et al., ICLR 2026) and the closed-form model edit that removes tasks without retraining.

The entry point is `auditor.fewshot.run.run_fewshot_audit`; nothing here reads or writes the run directory.
"""
