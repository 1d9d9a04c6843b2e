"""The floor `make bench` compares a steady pass with (issue #15): ⌈T_rel/100⌉ DescribeTasks per cluster
plus the cheapest listing of those tasks. Pure arithmetic, so asserted here rather than measured."""

from __future__ import annotations

from devtools.bench_report import ClusterShape, FleetSpec, pass_floor


def test_every_service_in_cloud_map_lists_the_cluster() -> None:
    floor = pass_floor([FleetSpec(1_000).shape()])
    assert (floor.t_rel, floor.describe, floor.listing, floor.listing_by) == (1_000, 10, 10, "ListTasks (cluster)")
    assert floor.calls == 20


def test_a_mixed_fleet_describes_only_the_tasks_that_matter_and_lists_them_per_service() -> None:
    spec = FleetSpec.parse("50000:0.1")
    assert (spec.services, spec.cloudmap_every, spec.cluster_name) == (2_500, 10, "bench-50k-mixed")
    assert spec.label == "50,000 (10% in Cloud Map)"
    floor = pass_floor([spec.shape()])
    # 250 Cloud Map services of 20 tasks: 5,000 tasks in 50 DescribeTasks; 250 listings (one page each)
    # beat 500 ListTasks pages over the whole cluster.
    assert (floor.t_rel, floor.describe, floor.listing) == (5_000, 50, 250)
    assert floor.listing_by == "ListInstances or ListTasks (per service)"


def test_clusters_add_up_and_pages_round_up() -> None:
    big = ClusterShape(tasks=1_000, relevant=(150, 150), instances=(150, 150))  # 3 describes, 4 listings per service
    small = ClusterShape(tasks=250, relevant=(101,), instances=(101,))
    nothing = ClusterShape(tasks=5_000, relevant=(), instances=())  # no call needed at all
    floor = pass_floor([big, small, nothing])
    assert (floor.t_rel, floor.describe, floor.listing) == (401, 3 + 2, 4 + 2)
    assert floor.listing_by == "ListInstances or ListTasks (per service)"


def test_cloud_map_listing_wins_when_services_register_fewer_instances_than_tasks() -> None:
    shape = ClusterShape(tasks=10_000, relevant=(250, 250), instances=(50, 50))
    floor = pass_floor([shape])
    assert (floor.describe, floor.listing, floor.listing_by) == (5, 2, "ListInstances")
