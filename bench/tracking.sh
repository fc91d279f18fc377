#!/usr/bin/env bash
# The AWS-cost figures of stack tracking (`stackpulse bench tracking`, on the
# scripted CloudFormation endpoint in throttle mode; no AWS account):
#   push     [PUSH_STACKS=3] stacks, one event at a time ~[GAP=6] s apart (uniform
#            timeline), pushed to /v1/ingest/eventbridge;
#            --poll-interval 2 --push-poll-interval 30
#   poll     the same without pushes
#   bursty   [PUSH_STACKS=3] stacks of [BURSTY_RESOURCES=12] resources on the bursty
#            timeline (starts in bursts, completions spread over 2 s to 2 min, as
#            CloudFormation creates), pushed; same intervals
#   bursty-poll  the same without pushes
#   scale    [SCALE_STACKS=300] stacks deploying at once within --aws-max-rps 4
#            ([SCALE_RESOURCES=2] resources each, events ~[SCALE_GAP=2] s apart)
#   bench/tracking.sh              # all five (scale takes 10+ minutes at 4 rps)
#   SCENARIOS="push poll" bench/tracking.sh
# Environment: STACKPULSE_BIN (the binary; built with cargo --release when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${STACKPULSE_BIN:-}
if [[ -z "$bin" ]]; then
  cargo build --release -p stackpulse --bin stackpulse >&2
  bin=target/release/stackpulse
fi
scenarios=${SCENARIOS:-push poll bursty bursty-poll scale}
for s in $scenarios; do
  case "$s" in
    push) "$bin" bench tracking --stacks "${PUSH_STACKS:-3}" --event-gap "${GAP:-6}" --push \
            --poll-interval 2 --push-poll-interval 30 --aws-max-rps 4 ;;
    poll) "$bin" bench tracking --stacks "${PUSH_STACKS:-3}" --event-gap "${GAP:-6}" \
            --poll-interval 2 --push-poll-interval 30 --aws-max-rps 4 ;;
    bursty) "$bin" bench tracking --stacks "${PUSH_STACKS:-3}" --resources "${BURSTY_RESOURCES:-12}" \
            --timeline bursty --push --poll-interval 2 --push-poll-interval 30 --aws-max-rps 4 ;;
    bursty-poll) "$bin" bench tracking --stacks "${PUSH_STACKS:-3}" --resources "${BURSTY_RESOURCES:-12}" \
            --timeline bursty --poll-interval 2 --push-poll-interval 30 --aws-max-rps 4 ;;
    scale) "$bin" bench tracking --stacks "${SCALE_STACKS:-300}" --resources "${SCALE_RESOURCES:-2}" \
            --event-gap "${SCALE_GAP:-2}" --poll-interval 2 --aws-max-rps 4 ;;
    *) echo "unknown scenario $s (push, poll, bursty, bursty-poll, scale)" >&2; exit 2 ;;
  esac
done
