"""Metric history for charts, downsampled in the database: the step range is cut into at most
`max_points` equal buckets and each bucket gives its mean, min and max (so spikes survive and a
million-step run still answers with a few hundred points)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cotrain.server.models import MetricPoint

SERIES = ("loss", "accuracy", "learning_rate", "tokens_per_second", "participants", "val_loss", "val_perplexity",
          "val_accuracy")


def metric_history(db: Session, session_id: str, max_points: int = 500, metrics: tuple[str, ...] = SERIES) -> dict[str, Any]:
    where = MetricPoint.session_id == session_id
    total, first, last = db.execute(
        select(func.count(MetricPoint.id), func.min(MetricPoint.step), func.max(MetricPoint.step)).where(where)
    ).one()
    if not total:
        return {"session_id": session_id, "total_points": 0, "downsampled": False, "points": []}
    if total <= max_points:
        rows = db.scalars(select(MetricPoint).where(where).order_by(MetricPoint.step, MetricPoint.id))
        points = [{"step": r.step, "time": r.time, **{m: getattr(r, m) for m in metrics}} for r in rows]
        return {"session_id": session_id, "total_points": total, "downsampled": False, "points": points}
    width = max(1, -(-(last - first + 1) // max_points))  # ceil division
    bucket = ((MetricPoint.step - first) // width).label("bucket")  # SQLAlchemy 2: `//` is integer division everywhere
    columns = [bucket, func.max(MetricPoint.step).label("step"), func.max(MetricPoint.time).label("time")]
    for m in metrics:
        col = getattr(MetricPoint, m)
        columns += [func.avg(col).label(m), func.min(col).label(f"{m}_min"), func.max(col).label(f"{m}_max")]
    rows = db.execute(select(*columns).where(where).group_by(bucket).order_by(bucket)).mappings()
    points = [{k: v for k, v in row.items() if k != "bucket"} for row in rows]
    return {"session_id": session_id, "total_points": total, "downsampled": True, "points": points}
