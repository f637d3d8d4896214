"""Gradio app for a Hub Space: upload an image, pick a CAM method and a target, see both heads' maps side by side.

Needs only torch, transformers and gradio: the model and its CAM pipeline load from the checkpoint's own code.
    DUALSIG_MODEL=user/convnext-dualsig python app.py
"""

import functools
import os
from pathlib import Path

from transformers import pipeline

MODEL = os.environ.get("DUALSIG_MODEL", "outputs/convnext-dualsig/hub")
EXAMPLES = [
    Path(__file__).resolve().parent / "examples" / name for name in ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")
]
PREDICTION = "prediction"
TOP_K = 5
SCORES_NOTE = (
    "**softmax p**: the softmax head's probability for the class; all classes share one unit of probability, so it "
    "also says how the class compares with the others. **sigmoid p**: the sigmoid branch's own yes/no probability "
    "that the class is in the image, independent of the other classes (the scores need not sum to 1)."
)
UNTRAINED_NOTE = (
    "**Note: this checkpoint's sigmoid branch was never trained** (`config.sigmoid_head_trained` is false): its maps "
    "and probabilities come from the branch's initial weights, not from the method."
)


@functools.lru_cache(maxsize=2)
def cam_pipeline(model_id: str = MODEL):
    return pipeline("dualsig-cam", model=model_id, trust_remote_code=True)


def class_names(config) -> dict[int, str]:
    """id -> the name shown for it: the label, with the id appended where several classes share a label."""
    labels = list(config.id2label.values())
    return {int(i): (f"{name} ({i})" if labels.count(name) > 1 else name) for i, name in config.id2label.items()}


def shown_name(model_id: str) -> str:
    """The repo id, or a local checkpoint's folder name."""
    return Path(model_id).name if os.path.isdir(model_id) else model_id


def explain_image(image, method: str = "gradcam", target=PREDICTION, model_id: str = MODEL):
    """(softmax overlay, sigmoid overlay, softmax top-5, sigmoid top-5, summary) for one image.

    `target`: a class id, a label name (any case), or "prediction"/empty for the softmax prediction. Bad input raises
    the library's ValueError (no image, unknown class name, class id out of range, unsupported method).
    """
    pipe = cam_pipeline(model_id)
    if target is None or str(target).strip().lower() in ("", PREDICTION):
        target = None
    softmax = pipe(image, method=method, head="softmax", target=target, top_k=TOP_K)
    sigmoid = pipe(image, method=method, head="sigmoid", target=softmax["target"])
    names = class_names(pipe.model.config)
    tops = [{names[c["id"]]: c["score"] for c in softmax["top_k"][head]} for head in ("softmax", "sigmoid")]
    summary = (
        f"prediction: {softmax['label']}; explained class: {names[softmax['target']]} (id {softmax['target']}); "
        f"softmax p = {softmax['softmax_score']:.3f}, sigmoid p = {sigmoid['sigmoid_score']:.3f}"
    )
    return softmax["overlay"], sigmoid["overlay"], tops[0], tops[1], summary


def _overlay_output(gr, label: str, elem_id: str):
    """An output image for one head's overlay, downloadable as PNG."""
    return gr.Image(
        label=label, format="png", type="pil", interactive=False, buttons=["download", "fullscreen"], elem_id=elem_id
    )


def build_demo(model_id: str = MODEL):
    import gradio as gr

    pipe = cam_pipeline(model_id)
    config = pipe.model.config
    methods = pipe.supported_methods()
    targets = [(PREDICTION, PREDICTION)] + [(name, str(i)) for i, name in sorted(class_names(config).items())]

    def explain_or_error(image, method, target):
        try:
            return explain_image(image, method, target, model_id)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from error

    with gr.Blocks(title="Dual-branch sigmoid CAM") as demo:
        gr.Markdown(
            "# Softmax vs sigmoid-branch class activation maps\n"
            f"`{shown_name(model_id)}`: the softmax head classifies; the sigmoid branch (Oh & Noh, *Beyond Softmax*, "
            "BMVC 2025) draws the maps. Upload an image, choose a method and a class, and compare."
        )
        if not getattr(config, "sigmoid_head_trained", True):
            gr.Markdown(UNTRAINED_NOTE, elem_id="untrained-note")
        with gr.Row():
            image = gr.Image(type="pil", label="image", elem_id="image")
            with gr.Column():
                method = gr.Dropdown(
                    methods, value="gradcam" if "gradcam" in methods else methods[0], label="method", elem_id="method"
                )
                target = gr.Dropdown(
                    targets,
                    value=PREDICTION,
                    label="target class (type to search; name or id)",
                    allow_custom_value=True,
                    filterable=True,
                    elem_id="target",
                )
                button = gr.Button("explain", variant="primary", elem_id="explain")
        with gr.Row():
            softmax = _overlay_output(gr, "softmax head", "softmax-map")
            sigmoid = _overlay_output(gr, "sigmoid branch", "sigmoid-map")
        with gr.Row():
            softmax_top = gr.Label(
                num_top_classes=TOP_K, label="softmax head: top 5 (softmax p)", elem_id="softmax-top"
            )
            sigmoid_top = gr.Label(
                num_top_classes=TOP_K, label="sigmoid branch: top 5 (sigmoid p)", elem_id="sigmoid-top"
            )
        summary = gr.Markdown(elem_id="summary")
        gr.Markdown(SCORES_NOTE)
        outputs = [softmax, sigmoid, softmax_top, sigmoid_top, summary]
        gr.Examples([[str(path), method.value, PREDICTION] for path in EXAMPLES], [image, method, target])
        # clear every output first, so an error never sits next to the previous image's results
        button.click(lambda: [None] * len(outputs), None, outputs, queue=False).then(
            explain_or_error, [image, method, target], outputs
        )
    return demo


if __name__ == "__main__":
    build_demo().launch()
