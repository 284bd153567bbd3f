"""The benchmarks: each is one `python -m lab bench NAME` command that writes a JSON file (the numbers live
there and in benchmarks/, not in unit tests).

    world     the embedded world: MiniCLIP zero-shot, clean CoCoOp, the BadCLIP regime per L-inf bound
    attacks   every attack: ACC, ASR (seen / unseen / OOD), the trigger on the clean model, SSIM
    detect    every model of a zoo scanned by each method: AUROC, accuracy, class-level F1
    repair    every implanted backdoored model of a zoo repaired with its scan's trigger
    collapse  meta-token collapse per attack, backdoored vs the clean model of the same seed
    gates     the meta-net gate a backdoor uses, and what an eps-bounded perturbation opens
    speed     one inversion step, a naive reference against the toolkit's path
    executors one zoo scanned by the local executor and by Ray: wall time, overhead, same results
"""
