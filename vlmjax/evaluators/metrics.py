"""Classification metrics with CLIP_benchmark's names: acc1, acc5, mean_per_class_recall."""

import numpy as np


def classification_metrics(topk: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """From top-k predicted classes [N, k>=1] (best first) and true labels [N].

    acc5 is reported only with at least 5 classes and k >= 5 (it is undefined below 5 classes);
    mean_per_class_recall is the balanced accuracy over classes present in `labels`.
    """
    topk = np.asarray(topk)
    labels = np.asarray(labels)
    correct1 = topk[:, 0] == labels
    out = {"acc1": float(correct1.mean())}
    if num_classes >= 5 and topk.shape[1] >= 5:
        out["acc5"] = float((topk[:, :5] == labels[:, None]).any(axis=1).mean())
    recalls = [correct1[labels == c].mean() for c in range(num_classes) if np.any(labels == c)]
    out["mean_per_class_recall"] = float(np.mean(recalls))
    return out


def retrieval_metrics(image_to_text: np.ndarray, text_to_image: np.ndarray,
                      image_of_text: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
                      ) -> dict[str, float]:
    """Recall@k of image->text ("text_retrieval") and text->image ("image_retrieval") search.

    Scores are [num_images, num_texts] (both directions, which differ for token-wise models);
    `image_of_text[t]` is the image that text t describes, so an image may have several texts.
    Text retrieval hits at k when any of the image's texts ranks in the top k; image retrieval
    when the text's image does. Ties count against the query: a candidate scoring exactly as
    high as the best positive ranks ahead of it (no credit from an arbitrary tie order).
    """
    i2t, t2i = np.asarray(image_to_text, np.float64), np.asarray(text_to_image, np.float64)
    image_of_text = np.asarray(image_of_text)
    num_images = i2t.shape[0]
    positive = image_of_text[None, :] == np.arange(num_images)[:, None]  # [images, texts]
    best = np.where(positive, i2t, -np.inf).max(axis=1)
    text_rank = np.sum(~positive & (i2t >= best[:, None]), axis=1)
    own = t2i[image_of_text, np.arange(len(image_of_text))]
    image_rank = np.sum(~positive & (t2i >= own[None, :]), axis=0)
    out = {}
    for k in ks:
        out[f"text_retrieval_recall@{k}"] = float(np.mean(text_rank < k))
        out[f"image_retrieval_recall@{k}"] = float(np.mean(image_rank < k))
    return out
