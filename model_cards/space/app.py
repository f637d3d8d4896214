"""Gradio app for a Hub Space: upload an image, pick a CAM method and a target, see both heads' maps side by side.

Needs only torch, transformers and gradio: the model and its CAM pipeline load from the checkpoint's own code.
    DUALSIG_MODEL=user/convnext-dualsig python app.py
"""

import functools
import os

from transformers import pipeline

MODEL = os.environ.get("DUALSIG_MODEL", "outputs/convnext-dualsig/hub")
METHODS = ["gradcam", "cam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam"]


@functools.lru_cache(maxsize=2)
def cam_pipeline(model_id: str = MODEL):
    return pipeline("dualsig-cam", model=model_id, trust_remote_code=True)


def explain_image(image, method: str = "gradcam", target: str = "", model_id: str = MODEL):
    """(softmax overlay, sigmoid overlay, summary) for one image; `target` is a label name or id, or empty for the
    softmax prediction."""
    pipe = cam_pipeline(model_id)
    label2id = pipe.model.config.label2id
    target_id = None
    if target:
        target_id = int(target) if target.strip().isdigit() else label2id.get(target.strip())
        if target_id is None:
            raise ValueError(f"unknown target {target!r}; use a class id or one of {sorted(label2id)[:10]}...")
    softmax = pipe(image, method=method, head="softmax", target=target_id)
    sigmoid = pipe(image, method=method, head="sigmoid", target=target_id)
    name = pipe.model.config.id2label[softmax["target"]]
    summary = (
        f"prediction: {softmax['label']}; explained class: {name}; softmax p = {softmax['softmax_score']:.3f}, "
        f"sigmoid p = {sigmoid['sigmoid_score']:.3f}"
    )
    return softmax["overlay"], sigmoid["overlay"], summary


def build_demo():
    import gradio as gr

    with gr.Blocks(title="Dual-branch sigmoid CAM") as demo:
        gr.Markdown("# Softmax vs sigmoid-branch class activation maps")
        with gr.Row():
            image = gr.Image(type="pil", label="image")
            with gr.Column():
                method = gr.Dropdown(METHODS, value="gradcam", label="method")
                target = gr.Textbox(label="target class (name or id; empty = prediction)")
                button = gr.Button("explain")
        with gr.Row():
            softmax = gr.Image(label="softmax head")
            sigmoid = gr.Image(label="sigmoid branch")
        summary = gr.Markdown()
        button.click(explain_image, [image, method, target], [softmax, sigmoid, summary])
    return demo


if __name__ == "__main__":
    build_demo().launch()
