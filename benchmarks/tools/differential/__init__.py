"""Reference differential: the AV-CIL reference's own scripts and the harness on identical generated data.

    python -m benchmarks.tools.differential --reference PATH/AV-CIL_ICCV2023 --out DIR \
        [--methods av_cil fine_tuning ...] [--modalities audio visual audio-visual] [--seeds 0 1 2] \
        [--size tiny|small|medium] [--epochs N|A,V,AV] [--jobs 2]

- `fixture`: a dataset in the reference's on-disk layout (the released-feature layout), and the harness store
  imported from it with the project's own import command;
- `reference`: the reference's scripts, run from the user's checkout in a subprocess, with a printed list of
  minimal textual patches applied to a temporary copy;
- `harness`: the harness cell on the same data, with the same epochs, batch sizes, memory and learning rate;
- `table`: per method x modality, per-step and average incremental accuracy of each side (mean +- std over the
  same seeds), the difference, seconds per run; per seed and step, the selected epoch and final train loss.

Writes DIR/differential.{md,json} and DIR/runs/<side>/<method>-<modality>-seed<s>.json (+ .log for the reference,
its full stdout: every epoch's loss and val accuracy); runs already done with the same settings, the same reference
code and (harness) the same method config are reused.

The other references, compared function by function on identical weights and tensors (`functional`: the reference's
own code in a subprocess, one `Check` per quantity), each `python -m benchmarks.tools.differential.<name>`:
- `cil_ml_audio` (mulimani/CIL-ML-Audio; `cil_ml_audio_run`: whole runs of its main script on generated phase files),
- `mcil` (chenyukun924/MCIL-AudioCLIP: MoE block, loss, scoring, metrics, schedule),
- `cign` (stoneMo/CIGN: grouping and model forward, one training iteration, the tie rule).
"""
