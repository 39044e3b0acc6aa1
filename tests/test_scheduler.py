"""nmt-serve's scheduler on its own: no sockets, no event loop, a clock passed as ``now``."""
from hypothesis import given, settings, strategies as st

from nmt.serve import Job, Scheduler


def job(n: int, beam: int = 3, gone=lambda: False) -> Job:
    return Job([f"s{i}" for i in range(n)], {"beam_size": beam}, gone=gone)


def decode(scheduler: Scheduler, slices) -> list[Job]:
    """What the server does with a round's slices: each sentence's 'translation' is itself."""
    return scheduler.decoded(slices, {"translations": [
        s for job, n in slices for s in job.sentences[job.next:job.next + n]]})


def test_a_large_job_is_decoded_a_slice_at_a_time_beside_small_ones():
    scheduler = Scheduler(batch_sentences=8, max_queued=1000, timeout_s=10)
    big, small = job(100), [job(2), job(3), job(1)]
    for j in (big, *small):
        assert scheduler.add(j, now=0.0)
    first = scheduler.take(now=0.0).slices
    # equal shares of 8 (2 each) first, then what is left over in turn: the big job takes it
    assert first == [(big, 3), (small[0], 2), (small[1], 2), (small[2], 1)]
    assert decode(scheduler, first) == [small[0], small[2]]
    second = scheduler.take(now=0.1).slices
    assert second == [(big, 7), (small[1], 1)]  # 4 each, and the small job's 3 unused go to big
    assert decode(scheduler, second) == [small[1]]
    assert scheduler.queued == 100 - 3 - 7 and scheduler.requests == 3 and scheduler.batches == 2
    while (slices := scheduler.take(now=0.2).slices):
        assert sum(n for _, n in slices) <= 8
        decode(scheduler, slices)
    assert big.result()["translations"] == big.sentences  # every slice, in order
    assert scheduler.queued == 0 and scheduler.jobs == [] and scheduler.requests == 4


def test_jobs_with_other_options_take_turns_round_robin():
    scheduler = Scheduler(batch_sentences=4, max_queued=1000, timeout_s=10)
    a, b, c = job(10, beam=3), job(10, beam=5), job(10, beam=3)
    for j in (a, b, c):
        scheduler.add(j, now=0.0)
    served = []
    for _ in range(4):
        slices = scheduler.take(now=0.0).slices
        assert len({j.key for j, _ in slices}) == 1  # one batch, one set of options
        served.append(slices)
        decode(scheduler, slices)
    assert served == [[(a, 2), (c, 2)], [(b, 4)], [(a, 2), (c, 2)], [(b, 4)]]


def test_a_job_that_arrives_while_a_batch_decodes_goes_before_the_jobs_just_served():
    scheduler = Scheduler(batch_sentences=4, max_queued=1000, timeout_s=10)
    a = job(10, beam=3)
    scheduler.add(a, now=0.0)
    slices = scheduler.take(now=0.0).slices
    late_comer = job(2, beam=5)
    scheduler.add(late_comer, now=0.5)
    decode(scheduler, slices)
    assert scheduler.take(now=0.6).slices == [(late_comer, 2)]


def test_more_jobs_than_the_batch_has_sentences_each_get_one_in_turn():
    scheduler = Scheduler(batch_sentences=2, max_queued=1000, timeout_s=10)
    jobs = [job(1) for _ in range(5)]
    for j in jobs:
        scheduler.add(j, now=0.0)
    rounds = []
    while (slices := scheduler.take(now=0.0).slices):
        rounds.append([jobs.index(j) for j, _ in slices])
        decode(scheduler, slices)
    assert rounds == [[0, 1], [2, 3], [4]]


def test_a_job_past_its_deadline_is_dropped_before_it_is_decoded():
    scheduler = Scheduler(batch_sentences=4, max_queued=100, timeout_s=10)
    slow, quick = job(20), job(2)
    scheduler.add(slow, now=0.0)
    scheduler.add(quick, now=5.0)
    assert scheduler.take(now=10.0).late == []  # due at 10: not late yet
    decode(scheduler, [(slow, 2), (quick, 2)])
    plan = scheduler.take(now=10.5)
    assert plan.late == [slow] and plan.gone == [] and plan.slices == []
    assert scheduler.queued == 0 and scheduler.jobs == [] and scheduler.abandoned == 0


def test_a_job_whose_client_hung_up_is_dropped_and_counted():
    scheduler = Scheduler(batch_sentences=4, max_queued=100, timeout_s=10)
    hung_up = []
    left, stays = job(30, gone=lambda: bool(hung_up)), job(3)
    scheduler.add(left, now=0.0)
    scheduler.add(stays, now=0.0)
    decode(scheduler, scheduler.take(now=1.0).slices)
    hung_up.append(True)
    plan = scheduler.take(now=2.0)
    assert plan.gone == [left] and plan.late == [] and plan.slices == [(stays, 1)]
    assert scheduler.abandoned == 1 and scheduler.queued == 1


def test_the_queue_refuses_what_does_not_fit_and_takes_it_once_there_is_room():
    scheduler = Scheduler(batch_sentences=4, max_queued=6, timeout_s=10)
    assert scheduler.add(job(4), now=0.0)
    assert not scheduler.add(job(3), now=0.0)  # 4 + 3 > 6: refused, nothing queued
    assert scheduler.queued == 4 and len(scheduler.jobs) == 1
    decode(scheduler, scheduler.take(now=0.0).slices)
    assert scheduler.queued == 0 and scheduler.add(job(3), now=1.0)


def test_a_job_without_sentences_completes_in_the_next_round():
    scheduler = Scheduler(batch_sentences=4, max_queued=6, timeout_s=10)
    empty, other = job(0), job(2)
    scheduler.add(empty, now=0.0)
    scheduler.add(other, now=0.0)
    slices = scheduler.take(now=0.0).slices
    assert slices == [(empty, 0), (other, 2)]
    assert decode(scheduler, slices) == [empty, other] and empty.result() == {"translations": []}


def test_a_failed_batch_drops_its_jobs_and_the_others_go_on():
    scheduler = Scheduler(batch_sentences=4, max_queued=100, timeout_s=10)
    a, b = job(10, beam=3), job(3, beam=5)
    scheduler.add(a, now=0.0)
    scheduler.add(b, now=0.0)
    scheduler.failed(scheduler.take(now=0.0).slices)
    assert scheduler.jobs == [b] and scheduler.queued == 3 and scheduler.requests == 0
    assert decode(scheduler, scheduler.take(now=0.0).slices) == [b]


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.tuples(st.integers(0, 40), st.sampled_from([1, 3])), max_size=12),
       batch=st.integers(1, 16))
def test_every_sentence_is_decoded_once_in_order_and_no_job_waits_long(lengths, batch):
    scheduler = Scheduler(batch_sentences=batch, max_queued=10_000, timeout_s=10)
    jobs = [job(n, beam) for n, beam in lengths]
    for j in jobs:
        assert scheduler.add(j, now=0.0)
    finished, rounds = [], 0
    waited = {id(j): 0 for j in jobs}  # rounds since a job was last served
    while (slices := scheduler.take(now=0.0).slices):
        rounds += 1
        assert sum(n for _, n in slices) <= batch and len({j.key for j, _ in slices}) == 1
        served = {id(j) for j, _ in slices}
        for j in scheduler.jobs:
            waited[id(j)] = 0 if id(j) in served else waited[id(j)] + 1
            # round robin: every other waiting job is served before this one's next turn
            assert waited[id(j)] < len(jobs)
        finished += decode(scheduler, slices)
    assert sorted(map(id, finished)) == sorted(map(id, jobs)) and scheduler.queued == 0
    for j in jobs:
        assert j.result()["translations"] == j.sentences
    assert rounds <= sum(max(n, 1) for n, _ in lengths)
