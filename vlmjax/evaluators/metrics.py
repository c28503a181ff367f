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


def retrieval_metrics(image_to_text: np.ndarray, text_to_image: np.ndarray, positive: np.ndarray,
                      ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k of image->text ("text_retrieval") and text->image ("image_retrieval") search.

    Scores are [num_images, num_texts] (both directions, which differ for token-wise models);
    `positive[i, t]` says text t is a correct answer for image i (and i for t): the image's own
    captions (several per image) or, for class-level relevance, any caption of its class.
    A query hits at k when its best-scoring positive ranks in the top k. Ties count against the
    query: a negative scoring exactly as high as that positive ranks ahead of it (no credit
    from an arbitrary tie order).
    """
    i2t, t2i = np.asarray(image_to_text, np.float64), np.asarray(text_to_image, np.float64)
    positive = np.asarray(positive, bool)
    best_text = np.where(positive, i2t, -np.inf).max(axis=1)
    text_rank = np.sum(~positive & (i2t >= best_text[:, None]), axis=1)
    best_image = np.where(positive, t2i, -np.inf).max(axis=0)
    image_rank = np.sum(~positive & (t2i >= best_image[None, :]), axis=0)
    out = {}
    for k in ks:
        out[f"text_retrieval_recall@{k}"] = float(np.mean(text_rank < k))
        out[f"image_retrieval_recall@{k}"] = float(np.mean(image_rank < k))
    return out
