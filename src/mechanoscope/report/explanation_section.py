"""The report's explanation section: what the networks look at, and where they may not be trusted.

Shows results computed elsewhere (:func:`mechanoscope.pipeline.explain.explain_run`,
as ``mechanoscope explain`` writes them to ``RUN/explain/``): attribution galleries
(crops with the attribution map overlaid), the embedding map of the penultimate
features and the applicability-domain summary. Computes nothing but the pictures.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["attribution_gallery_png", "embedding_png", "explanation_section_html", "read_explanation", "domain_sentences"]

_METHOD_WORDS = {
    "integrated_gradients": "integrated gradients (how much each pixel, moved from an empty field to its value, raised the output)",
    "gradcam": "Grad-CAM (where the last fine-grained convolution layer's evidence for the output lies)",
    "occlusion": "occlusion (how much the output drops when an 8-pixel square is blanked)",
}


def attribution_gallery_png(crops: np.ndarray, maps: np.ndarray, titles: Sequence[str], *, masks: np.ndarray | None = None, per_row: int = 6) -> bytes:
    """Crops (grey) with their attribution maps overlaid (red: raises the output, blue: lowers it).

    ``crops``, ``maps`` and optional ``masks`` (outline drawn) are ``(n, H, W)``; each
    map is scaled to its own largest absolute value. Returns PNG bytes.
    """
    from mechanoscope.report.figures import _plt, figure_to_png_bytes

    plt = _plt()
    n = len(crops)
    cols = max(1, min(per_row, n))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.8 * cols, 3.7 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        img = crops[i]
        lo, hi = np.percentile(img, [1, 99])
        top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
        top.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        top.set_title(str(titles[i]), fontsize=7)
        bottom.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        m = maps[i]
        v = float(np.abs(m).max()) or 1.0
        bottom.imshow(m, cmap="bwr", vmin=-v, vmax=v, alpha=0.6)
        if masks is not None:
            bottom.contour(masks[i] > 0.5, levels=[0.5], colors="k", linewidths=0.6)
    fig.tight_layout()
    return figure_to_png_bytes(fig)


def embedding_png(coords: np.ndarray, colour_by: Mapping[str, Sequence[Any]], *, explained: Sequence[float] | None = None) -> bytes:
    """The 2-D embedding, one panel per colouring (e.g. prediction, condition, replicate).

    Categorical columns get one colour per value (legend), numeric ones a colour bar
    (predicted modulus on a log scale when all values are positive). Returns PNG bytes.
    """
    from mechanoscope.report.figures import _plt, figure_to_png_bytes

    plt = _plt()
    k = max(1, len(colour_by))
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.8), squeeze=False)
    lab = [f"PC{i + 1}" + (f" ({100 * explained[i]:.0f} % of variance)" if explained else "") for i in range(2)]
    for ax, (name, values) in zip(axes[0], colour_by.items()):
        vals = np.asarray(values)
        if np.issubdtype(vals.dtype, np.number) and len(np.unique(vals[np.isfinite(vals)])) > 12:
            pos = np.all(vals[np.isfinite(vals)] > 0)
            sc = ax.scatter(coords[:, 0], coords[:, 1], c=np.log10(vals) if pos else vals, s=6, cmap="viridis")
            fig.colorbar(sc, ax=ax, label=f"log10 {name}" if pos else name)
        else:
            for v in sorted(map(str, set(vals.astype(str)))):
                sel = vals.astype(str) == v
                ax.scatter(coords[sel, 0], coords[sel, 1], s=6, label=v)
            ax.legend(fontsize=7, markerscale=2, loc="best")
        ax.set_title(f"coloured by {name}", fontsize=9)
        ax.set_xlabel(lab[0], fontsize=8)
        ax.set_ylabel(lab[1], fontsize=8)
    fig.tight_layout()
    return figure_to_png_bytes(fig)


def domain_sentences(domain: Mapping[str, Any]) -> list[str]:
    """The applicability-domain summary in plain words, one sentence per model."""
    out = []
    for target, m in (domain.get("models") or {}).items():
        if not m.get("checked"):
            out.append(f"Model for {target}: {m.get('note', 'no domain check was possible')}.")
            continue
        frac = m.get("fraction_cells_out")
        s = (f"Model for {target}: {m['n_cells_out']} of {m['n_cells']} cells ({100 * (frac or 0):.1f} %) lie outside the range of the "
             f"training cells (about 5 % is expected for images taken like the training images); {m['n_images_out']} of {m['n_images']} images are flagged as imaged unlike them")
        if m["n_images_out"]:
            shown = ", ".join(m["images_out"][:8]) + (" …" if len(m["images_out"]) > 8 else "")
            s += f" ({shown}): their predictions are extrapolations and their intervals are not calibrated"
        out.append(s + ".")
    run = domain.get("run") or {}
    if run.get("n_images") and len(domain.get("models") or {}) > 1:
        out.append(f"Over all models, {run['n_images_out']} of {run['n_images']} images are flagged; images taken like the training images are flagged "
                   f"at a nominal rate of at most {100 * float(run.get('image_alpha', 0.05)):.0f} % (Holm's procedure over every model's image tests).")
    iv = domain.get("intervals") or {}
    if iv.get("n_cells"):
        if iv.get("n_not_calibrated"):
            out.append(f"Intervals: {iv['n_not_calibrated']} of {iv['n_cells']} cells have their modulus interval marked as not calibrated "
                       "(column pred_interval_calibrated is false) because the cell or its image lies outside the regression model's training domain; "
                       "the interval is still shown, but its nominal coverage is not claimed there.")
        else:
            out.append(f"Intervals: all {iv['n_cells']} cells lie inside the regression model's domain, so their intervals are claimed as calibrated.")
    return out


def read_explanation(folder: str | Path) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """``explanation.json`` and its PNGs from a folder written by ``mechanoscope explain``, or None."""
    p = Path(folder)
    if not (p / "explanation.json").is_file():
        return None
    exp = json.loads((p / "explanation.json").read_text(encoding="utf-8"))
    pngs = {q.name: q.read_bytes() for q in sorted(p.glob("*.png"))}
    return exp, pngs


_SECTION = """
<h2>What the networks look at, and where they may not be trusted</h2>
{% if domain_lines %}<h3>Applicability domain</h3>
{% for s in domain_lines %}<p>{{ s }}</p>
{% endfor %}
<p>The domain score of a cell is its distance to the training cells in the network's own features and in simple image statistics
of its crop (noise, illumination slope, sharpness, contrast), in units of the distance that 95 % of cells of held-out training images stay
within. An image is flagged when its median cell lies further out than held-out images are expected to, when its pixel size lies
outside the training images' range by more than the allowed factor, or when statistics of the native image before resampling
(pixel noise, sharpness, contrast, intensity percentiles, illumination unevenness, typical cell area) lie outside what images of
the training experiment showed (calibrated leave-one-image-out so that few images taken like the training images are flagged).
Coverage of the intervals is claimed only for cells inside the domain.</p>
{% if images %}<table><tr><th>image</th><th>cells</th><th>% cells outside</th><th>image in domain</th><th>why flagged</th></tr>
{% for r in images %}<tr><td>{{ r.image_id }}</td><td class="num">{{ r.n_cells }}</td><td class="num">{{ "%.0f" | format(100 * r.fraction_cells_out) }}</td><td>{{ "yes" if r.in_domain else "no" }}</td><td>{{ r.reason or "" }}</td></tr>
{% endfor %}</table>{% endif %}
{% endif %}
{% for a in attributions %}<h3>Attribution maps: {{ a.model }}</h3>
<p>Method: {{ a.method_words }}; baseline: {{ a.baseline }}; explained output: {{ a.explained_output }}.
{% if a.fraction_on_cell_median is not none %}On the cells shown, a median {{ "%.0f" | format(100 * a.fraction_on_cell_median) }} % of the
absolute attribution lies on the cell, which covers {{ "%.0f" | format(100 * a.area_fraction_median) }} % of the crop.{% endif %}
{% if a.randomisation %}Model-randomisation check (Adebayo et al.): maps of the trained network vs the same network with random
weights have a median rank correlation of {{ "%.2f" | format(a.randomisation.spearman_median) }} and structural similarity
{{ "%.2f" | format(a.randomisation.ssim_median) }} ({{ a.randomisation_words }}).{% endif %}</p>
{% if a.png %}<figure><img src="data:image/png;base64,{{ a.png }}" alt="attribution gallery {{ a.model }}">
<figcaption><strong>Crops and attribution.</strong> Top: the crop as the network sees it (relative contrast); bottom: the attribution
overlaid (red raises the output, blue lowers it), the cell outline in black. Titles: the class or value explained.</figcaption></figure>{% endif %}
{% endfor %}
{% if embedding %}<figure><img src="data:image/png;base64,{{ embedding }}" alt="embedding map">
<figcaption><strong>Embedding map.</strong> Every cell placed by the first two principal components of the network's
penultimate-layer features ({{ embedding_model }}): cells the network treats alike lie close together.</figcaption></figure>{% endif %}
"""


def _randomisation_words(r: Mapping[str, Any]) -> str:
    rho = r.get("spearman_median")
    if rho is None:
        return "not computed"
    if rho < 0.5:
        return "the maps depend on what the network learnt, as they should"
    return "the maps look much the same with random weights: they show the image more than what the network learnt — read them with care"


def explanation_section_html(explanation: Mapping[str, Any], pngs: Mapping[str, bytes] | None = None) -> str:
    """HTML of the explanation section (escaped; embed as-is in the report)."""
    import jinja2

    pngs = pngs or {}
    atts = []
    for a in explanation.get("attributions", []):
        atts.append({**a, "method_words": _METHOD_WORDS.get(a["method"], a["method"]),
                     "randomisation_words": _randomisation_words(a.get("randomisation") or {}),
                     "png": base64.b64encode(pngs[a["figure"]]).decode("ascii") if a.get("figure") in pngs else None})
    emb = explanation.get("embedding") or {}
    domain = explanation.get("domain") or {}
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(_SECTION).render(
        domain_lines=domain_sentences(domain) if domain else [],
        images=sorted((r for r in domain.get("images", []) if r.get("in_domain") is not None), key=lambda r: bool(r["in_domain"]))[:40],  # flagged first
        attributions=atts,
        embedding=base64.b64encode(pngs[emb["figure"]]).decode("ascii") if emb.get("figure") in pngs else None,
        embedding_model=emb.get("model", ""),
    )
