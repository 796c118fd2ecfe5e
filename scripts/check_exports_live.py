"""Loads folders vlm_jax exported with the reference libraries themselves and compares their outputs with the
fixtures' reference numbers: the export half of the converter tests, run live (tests/test_interop.py calls it when
the optional .bench-venv exists).

  .bench-venv/bin/python scripts/check_exports_live.py CASE=FORMAT:FOLDER ...

CASE names a fixture (tests/fixtures/weights/CASE/reference.npz: the inputs and the expected outputs); FORMAT is
hf (transformers AutoModel.from_pretrained) or open_clip (open_clip.create_model("local-dir:FOLDER")). Prints one
JSON line per folder with the largest absolute differences; exits 1 when any exceeds 1e-5 (relative to 1 + |x|).
Standalone: imports nothing from vlm_jax.
"""
import json
import sys
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "weights"


def outputs(fmt, folder, pv, ids, naflex=None):
    import torch
    torch.set_num_threads(1)
    pv, ids = torch.from_numpy(pv), torch.from_numpy(ids).long()
    with torch.no_grad():
        if fmt == "hf":
            from transformers import AutoModel
            model = AutoModel.from_pretrained(folder).float().eval()
            image_inputs = {"pixel_values": pv}
            if naflex is not None:  # Siglip2: the processor's patches, mask and grid shapes
                image_inputs.update(pixel_attention_mask=torch.from_numpy(naflex[0]).long(),
                                    spatial_shapes=torch.from_numpy(naflex[1]).long())
            img = model.get_image_features(**image_inputs)
            txt = model.get_text_features(input_ids=ids)
            img = getattr(img, "pooler_output", img)
            txt = getattr(txt, "pooler_output", txt)
            logits = model(input_ids=ids, **image_inputs).logits_per_image
        else:
            import open_clip
            model = open_clip.create_model("local-dir:" + str(Path(folder).resolve()), device="cpu",
                                           precision="fp32").eval()
            img, txt = model.encode_image(pv, normalize=False), model.encode_text(ids, normalize=False)
            logits = model.get_logits(pv, ids)[0]
    return {"image_embeds": img.numpy(), "text_embeds": txt.numpy(), "logits_per_image": logits.numpy()}


def main(argv):
    worst = 0.0
    for spec in argv:
        case, rest = spec.split("=", 1)
        fmt, folder = rest.split(":", 1)
        ref = dict(np.load(FIXTURES / case / "reference.npz"))
        if "spatial_shapes" in ref:  # NaFlex: already patches, normalised with mean = std = 0.5
            got = outputs(fmt, folder, ref["pixel_values"], ref["input_ids"],
                          (ref["pixel_attention_mask"], ref["spatial_shapes"]))
            diffs = {k: float(np.max(np.abs(got[k] - ref[k]) / (1 + np.abs(ref[k])))) for k in got}
            worst = max(worst, *diffs.values())
            print(json.dumps({"case": case, "format": fmt, "folder": folder, **diffs}), flush=True)
            continue
        mean, std = ref["mean"], ref["std"]
        if fmt == "hf" and (Path(folder) / "preprocessor_config.json").exists():
            pre = json.loads((Path(folder) / "preprocessor_config.json").read_text())
            mean, std = np.asarray(pre["image_mean"], np.float32), np.asarray(pre["image_std"], np.float32)
        elif fmt == "open_clip":
            pre = json.loads((Path(folder) / "open_clip_config.json").read_text())["preprocess_cfg"]
            mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
        pv = np.ascontiguousarray((((ref["image"] + 1) / 2 - mean) / std).transpose(0, 3, 1, 2)).astype(np.float32)
        got = outputs(fmt, folder, pv, ref["input_ids"])
        diffs = {k: float(np.max(np.abs(got[k] - ref[k]) / (1 + np.abs(ref[k])))) for k in got}
        worst = max(worst, *diffs.values())
        print(json.dumps({"case": case, "format": fmt, "folder": folder, **diffs}), flush=True)
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
