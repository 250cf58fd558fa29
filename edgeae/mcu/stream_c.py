"""The streaming C API of the generated model: rows in one at a time, a score and a flag out for each
window completed, in a fixed struct (issue 29, item 5).

It is the C of edgeae.runtime.streaming.StreamScorer: the windows batch scoring cuts from a series
(the first after EDGEAE_TIMESTEPS rows, then every stride rows, the export's window.stride), each
scored by edgeae_score itself, so a stream and the batch call give the same numbers bit for bit;
a window that holds a missing value (NaN) is reported missing and never run. c_code.render puts
HEADER_API into edgeae_model.h and SOURCE_CODE into edgeae_model.c.
"""
from __future__ import annotations

EXAMPLE_START, EXAMPLE_END = " * Example, a main loop:\n", " * (end of example)\n"

HEADER_API = r"""
/* ---- Streaming: one row in at a time, a score and a flag out for each window completed ----
 *
 * An edgeae_stream holds the last EDGEAE_TIMESTEPS rows, the last window's reconstruction and its
 * own edgeae_work: @STREAM_BYTES@ bytes (sizeof(edgeae_stream)), fixed, nothing allocated.
 * A window completes with row EDGEAE_TIMESTEPS, then every `stride` rows (EDGEAE_STRIDE, the
 * export's window stride, unless set after edgeae_stream_init): the windows starting at rows 0,
 * stride, 2*stride, ... that batch scoring cuts from a series and edgeae's Python StreamScorer
 * scores. Each is scored by edgeae_score: the same score, bit for bit, as the batch call gives it.
 * Each push moves the held rows up by one row (EDGEAE_WINDOW_VALUES floats copied, no extra copy
 * of the window); a completed window runs the network once.
 *
 * Missing values: a NaN in a row marks it missing. A window holding such a row is never run and
 * is reported EDGEAE_STREAM_MISSING: neither anomalous nor normal (*score NaN, *anomaly 0), as
 * StreamScorer reports it. The windows after it are scored again once EDGEAE_TIMESTEPS rows
 * without a NaN have come. An infinite value is no missing value: it is scored (an infinite score,
 * anomalous), as edgeae_score does.
 *
 * Example, a main loop:
 *
 *     #include "edgeae_model.h"
 *
 *     void read_sensor(float row[EDGEAE_FEATURES]); // yours: a reading per feature, NaN where missing
 *     void raise_alarm(double score);               // yours
 *     void note_gap(void);                          // yours
 *
 *     static edgeae_stream stream; // static: @STREAM_BYTES@ bytes, off the stack
 *
 *     int main(void)
 *     {
 *         float row[EDGEAE_FEATURES];
 *         double score;
 *         int anomaly;
 *         edgeae_stream_init(&stream); // stride EDGEAE_STRIDE; set stream.stride here for another
 *         for (;;) {
 *             read_sensor(row);
 *             switch (edgeae_stream_push(&stream, row, &score, &anomaly)) {
 *             case EDGEAE_STREAM_WINDOW: if (anomaly) raise_alarm(score); break; // a window scored
 *             case EDGEAE_STREAM_MISSING: note_gap(); break; // it held a NaN: not scored
 *             default: break; // EDGEAE_STREAM_NONE: this row completed no window
 *             }
 *         }
 *     }
 * (end of example)
 */
#define EDGEAE_STRIDE @STRIDE@ /* rows between the starts of two windows: the export's window stride */

#define EDGEAE_STREAM_NONE 0    /* the row completed no window; *score and *anomaly untouched */
#define EDGEAE_STREAM_WINDOW 1  /* a window completed and was scored: *score, *anomaly (0 or 1) */
#define EDGEAE_STREAM_MISSING 2 /* a window completed holding a NaN: not run; *score NaN, *anomaly 0 */

/* A stream's state, @STREAM_BYTES@ bytes: the caller owns it (static, or anywhere it lives long). */
typedef struct edgeae_stream {
    float rows[EDGEAE_WINDOW_VALUES];           /* the last EDGEAE_TIMESTEPS rows, oldest first */
    float reconstruction[EDGEAE_WINDOW_VALUES]; /* the last scored window's, raw units */
    int32_t stride; /* EDGEAE_STRIDE after init; any value >= 1 may be set before the first push */
    int32_t due;    /* rows to push until the next window completes */
    int32_t clean;  /* the newest rows without a NaN, counted up to EDGEAE_TIMESTEPS */
    edgeae_work work;
} edgeae_stream;

/* Starts (or restarts) a stream: no rows held, stride EDGEAE_STRIDE. */
void edgeae_stream_init(edgeae_stream *stream);

/* Takes one row of EDGEAE_FEATURES raw values (NaN: missing). Returns EDGEAE_STREAM_WINDOW when it
 * completed a window (its score and flag written), EDGEAE_STREAM_MISSING when it completed one
 * holding a missing value, EDGEAE_STREAM_NONE otherwise. */
int edgeae_stream_push(edgeae_stream *stream, const float row[EDGEAE_FEATURES], double *score, int *anomaly);
"""

SOURCE_CODE = r"""
/* ---- Streaming (see edgeae_model.h) ---- */

void edgeae_stream_init(edgeae_stream *stream)
{
    int i;
    for (i = 0; i < EDGEAE_WINDOW_VALUES; i++) {
        stream->rows[i] = 0.0f;
        stream->reconstruction[i] = 0.0f;
    }
    stream->stride = EDGEAE_STRIDE;
    stream->due = EDGEAE_TIMESTEPS;
    stream->clean = 0;
}

int edgeae_stream_push(edgeae_stream *stream, const float row[EDGEAE_FEATURES], double *score, int *anomaly)
{
    int i, gap = 0;
    float *newest = stream->rows + (EDGEAE_WINDOW_VALUES - EDGEAE_FEATURES);
    for (i = 0; i < EDGEAE_WINDOW_VALUES - EDGEAE_FEATURES; i++)
        stream->rows[i] = stream->rows[i + EDGEAE_FEATURES];
    for (i = 0; i < EDGEAE_FEATURES; i++) {
        newest[i] = row[i];
        if (isnan(row[i]))
            gap = 1;
    }
    stream->clean = gap ? 0 : (stream->clean < EDGEAE_TIMESTEPS ? stream->clean + 1 : EDGEAE_TIMESTEPS);
    if (--stream->due > 0)
        return EDGEAE_STREAM_NONE;
    stream->due = stream->stride > 0 ? stream->stride : 1;
    if (stream->clean < EDGEAE_TIMESTEPS) {
        *score = NAN;
        *anomaly = 0;
        return EDGEAE_STREAM_MISSING;
    }
    *score = edgeae_score(stream->rows, stream->reconstruction, &stream->work);
    *anomaly = edgeae_is_anomaly(*score);
    return EDGEAE_STREAM_WINDOW;
}
"""


def stream_bytes(window_values: int, work_bytes: int) -> int:
    """sizeof(edgeae_stream): two float windows, three int32 and the work area (all 4-byte aligned)."""
    return 2 * 4 * window_values + 3 * 4 + work_bytes


def stream_api(stride: int, window_values: int, work_bytes: int) -> tuple[str, str]:
    """The header's and the source's streaming parts, filled in."""
    size = str(stream_bytes(window_values, work_bytes))
    header = HEADER_API.replace("@STRIDE@", str(int(stride))).replace("@STREAM_BYTES@", size)
    return header, SOURCE_CODE
