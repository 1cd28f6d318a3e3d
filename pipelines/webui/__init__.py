"""`vcla webui`: a Gradio page to chat with a checkpoint and to browse a run's data.

app.py lays out the page and wires its events; chat.py streams answers through `training.chat`;
data.py, rejected.py, cards.py and browse.py read and show the run folder; uploads.py checks
uploaded images with the pipeline's own checks; safety.py decides where the server may listen;
labels.py holds the page's words (zh, en); examples.py picks the held-out example images.

Importing this package is cheap: only app.py, chat.py and the command import Gradio and torch.
"""
