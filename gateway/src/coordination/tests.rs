//! Small hand-made fleets where a person knows the right call.

use super::track::{GeoOrigin, cart_state, combine_state, truck_state};
use super::*;
use std::time::Duration;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_nanos(1_790_000_000_000_000_000 + secs * 1_000_000_000)
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("id")
}

/// A 10.9 t combine harvesting 35 t/h, `full_in` seconds from full.
fn combine(name: &str, x: f64, y: f64, full_in: f64) -> Combine {
    let rate = 35_000.0 / 3600.0;
    Combine {
        id: id(name),
        pos: Position::new(x, y),
        velocity: Position::default(),
        fill_kg: (10_900.0 - rate * full_in).max(0.0),
        capacity_kg: 10_900.0,
        fill_rate_kg_s: rate,
        unload_kg_s: 103.0,
        activity: CombineActivity::Harvesting,
        seen: t(0),
    }
}

fn cart(name: &str, x: f64, y: f64, load_kg: f64) -> Cart {
    Cart {
        id: id(name),
        pos: Position::new(x, y),
        load_kg,
        capacity_kg: 30_000.0,
        speed_empty_m_s: 15.0 / 3.6,
        speed_loaded_m_s: 10.0 / 3.6,
        auger_kg_s: 200.0,
        activity: CartActivity::Idle,
        seen: t(0),
    }
}

fn truck(name: &str, load_kg: f64) -> Truck {
    Truck { id: id(name), load_kg, capacity_kg: 25_000.0, activity: TruckActivity::Staging, seen: t(0) }
}

fn fleet(combines: Vec<Combine>, carts: Vec<Cart>, trucks: Vec<Truck>) -> FleetState {
    FleetState { combines, carts, trucks, silent: Vec::new(), sync_s: 20.0 }
}

fn task_of<'a>(plan: &'a Plan, device: &str) -> Option<(Task, Option<&'a str>)> {
    plan.assignments
        .iter()
        .chain(&plan.upcoming)
        .find(|a| a.device.as_str() == device)
        .map(|a| (a.task, a.target.as_ref().map(|t| t.as_str())))
}

#[test]
fn dispatcher_sends_the_nearest_cart_to_the_combine_about_to_fill() {
    let state = fleet(
        vec![combine("combine-a", 200.0, 300.0, 60.0), combine("combine-b", 800.0, 300.0, 900.0)],
        vec![cart("cart-near-a", 250.0, 100.0, 0.0), cart("cart-near-b", 800.0, 100.0, 0.0)],
        vec![truck("truck-1", 0.0)],
    );
    let plan = Dispatcher::default().plan(&state, t(0));
    assert_eq!(task_of(&plan, "cart-near-a"), Some((Task::Serve, Some("combine-a"))), "{plan:#?}");
    // combine-b is 15 min from full: its cart is told which combine is next, but waits.
    assert_eq!(task_of(&plan, "cart-near-b"), Some((Task::Hold, Some("combine-b"))), "{plan:#?}");
}

#[test]
fn dispatcher_serves_the_most_urgent_combine_first_even_if_another_is_closer() {
    let state = fleet(
        vec![combine("combine-close", 100.0, 100.0, 1200.0), combine("combine-urgent", 600.0, 400.0, 240.0)],
        vec![cart("cart-1", 100.0, 50.0, 0.0)],
        vec![],
    );
    let plan = Dispatcher::default().plan(&state, t(0));
    assert_eq!(task_of(&plan, "cart-1"), Some((Task::Serve, Some("combine-urgent"))), "{plan:#?}");
}

#[test]
fn a_cart_without_room_for_a_tank_unloads_into_the_fullest_truck_with_room() {
    for mut policy in PolicyKind::ALL.map(PolicyKind::build) {
        // The combine is 20 minutes from full: time enough to unload first.
        let state = fleet(
            vec![combine("combine-1", 500.0, 500.0, 1200.0)],
            vec![cart("cart-1", 100.0, 100.0, 22_000.0)],
            vec![truck("truck-empty", 0.0), truck("truck-half", 12_000.0), truck("truck-full", 24_900.0)],
        );
        let plan = policy.plan(&state, t(0));
        assert_eq!(
            task_of(&plan, "cart-1"),
            Some((Task::UnloadInto, Some("truck-half"))),
            "{}: {plan:#?}",
            policy.name()
        );
        assert_eq!(task_of(&plan, "truck-full"), Some((Task::Haul, None)), "{}", policy.name());
        assert_eq!(task_of(&plan, "truck-half"), Some((Task::Hold, None)), "{}", policy.name());
    }
}

#[test]
fn dispatcher_tops_up_a_combine_about_to_fill_when_the_trip_to_the_trucks_takes_too_long() {
    // 8 t of room, the combine full in 100 s, and a round trip to the trucks of 7 minutes:
    // empty what fits now so the combine keeps cutting, then unload.
    let state = fleet(
        vec![combine("combine-1", 500.0, 500.0, 100.0)],
        vec![cart("cart-1", 100.0, 100.0, 22_000.0)],
        vec![truck("truck-1", 0.0)],
    );
    let plan = Dispatcher::default().plan(&state, t(0));
    assert_eq!(task_of(&plan, "cart-1"), Some((Task::Serve, Some("combine-1"))), "{plan:#?}");
    // A baseline sends it to the truck: the combine will stop.
    let plan = PolicyKind::NearestIdle.build().plan(&state, t(0));
    assert_eq!(task_of(&plan, "cart-1"), Some((Task::UnloadInto, Some("truck-1"))), "{plan:#?}");
}

#[test]
fn trucks_away_too_long_for_the_harvest_rate_are_flagged() {
    let mut policy = Dispatcher::default();
    let combines: Vec<Combine> =
        (0..4).map(|i| combine(&format!("combine-{i}"), 100.0, 100.0 * i as f64, 900.0)).collect();
    let carts = vec![cart("cart-1", 0.0, 0.0, 0.0), cart("cart-2", 0.0, 0.0, 0.0)];
    let mut away = truck("truck-1", 25_000.0);
    away.activity = TruckActivity::Away;
    // The truck leaves at 0 and is back after 55 minutes: 25 t an hour for 140 t/h.
    let _ = policy.plan(&fleet(combines.clone(), carts.clone(), vec![away]), t(0));
    let plan = policy.plan(&fleet(combines, carts, vec![truck("truck-1", 0.0)]), t(3300));
    assert!(
        plan.warnings.iter().any(|w| w
            .starts_with("trucks cannot keep up: 1 trucks move about 27 t/h (a round trip takes 55 min)")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn nearest_idle_calls_at_80_percent_and_stop_and_call_only_when_full() {
    // combine-1 at 85 %; combine-2 at 50 %.
    let at = |fraction: f64| 10_900.0 * (1.0 - fraction) / (35_000.0 / 3600.0);
    let state = fleet(
        vec![combine("combine-1", 900.0, 900.0, at(0.85)), combine("combine-2", 100.0, 100.0, at(0.5))],
        vec![cart("cart-far", 0.0, 0.0, 0.0), cart("cart-near", 800.0, 800.0, 0.0)],
        vec![],
    );
    let plan = PolicyKind::NearestIdle.build().plan(&state, t(0));
    assert_eq!(task_of(&plan, "cart-near"), Some((Task::Serve, Some("combine-1"))), "{plan:#?}");
    assert_eq!(task_of(&plan, "cart-far"), None, "nobody calls for it: {plan:#?}");

    let mut p0 = PolicyKind::StopAndCall.build();
    assert_eq!(task_of(&p0.plan(&state, t(0)), "cart-near"), None, "85 % is not full");
    let mut full = state.clone();
    full.combines[0].fill_kg = 10_900.0;
    full.combines[0].activity = CombineActivity::WaitingFull;
    assert_eq!(task_of(&p0.plan(&full, t(5)), "cart-near"), Some((Task::Serve, Some("combine-1"))));
}

#[test]
fn nearest_idle_serves_calls_first_come_first_served() {
    let state =
        fleet(vec![combine("combine-1", 900.0, 900.0, 0.0)], vec![cart("cart-1", 0.0, 0.0, 0.0)], vec![]);
    let mut policy = PolicyKind::NearestIdle.build();
    let _ = policy.plan(&state, t(0));
    // A second combine calls later, closer to the cart; the cart is busy with the first.
    let mut later = state.clone();
    later.combines.push(combine("combine-2", 10.0, 10.0, 0.0));
    let plan = policy.plan(&later, t(5));
    assert_eq!(task_of(&plan, "cart-1"), Some((Task::Serve, Some("combine-1"))), "{plan:#?}");
}

#[test]
fn dispatcher_does_not_flip_flop_on_small_changes() {
    let mut state = fleet(
        vec![combine("combine-1", 500.0, 500.0, 100.0)],
        vec![cart("cart-a", 400.0, 400.0, 0.0), cart("cart-b", 600.0, 620.0, 0.0)],
        vec![],
    );
    let mut policy = Dispatcher::default();
    let first = policy.plan(&state, t(0));
    let chosen = if task_of(&first, "cart-a").is_some_and(|(task, _)| task == Task::Serve) {
        "cart-a"
    } else {
        "cart-b"
    };
    let other = if chosen == "cart-a" { 1 } else { 0 };
    // The other cart is now 30 m closer than the chosen one: not worth a change of mind.
    let chosen_distance = state.carts[1 - other].pos.drive_m(state.combines[0].pos);
    state.carts[other].pos = Position::new(500.0, 500.0 - (chosen_distance - 30.0));
    let second = policy.plan(&state, t(5));
    assert_eq!(task_of(&second, chosen), Some((Task::Serve, Some("combine-1"))), "{second:#?}");
    let mut told = std::collections::HashMap::new();
    let _ = policy::changed(&mut told, &first);
    assert!(policy::changed(&mut told, &second).is_empty(), "nothing new to tell: {second:#?}");
}

#[test]
fn a_fleet_too_small_for_the_harvest_rate_is_flagged() {
    let mut combines: Vec<Combine> =
        (0..4).map(|i| combine(&format!("combine-{i}"), 800.0, 200.0 * i as f64, 600.0)).collect();
    for c in &mut combines {
        c.fill_rate_kg_s = 60_000.0 / 3600.0;
    }
    let plan = Dispatcher::default()
        .plan(&fleet(combines.clone(), vec![cart("cart-1", 0.0, 0.0, 0.0)], vec![]), t(0));
    assert!(plan.warnings.iter().any(|w| w.contains("carts cannot keep up")), "{:?}", plan.warnings);
    let carts = (0..6).map(|i| cart(&format!("cart-{i}"), 0.0, 0.0, 0.0)).collect();
    let plan = Dispatcher::default().plan(&fleet(combines, carts, vec![]), t(0));
    assert!(!plan.warnings.iter().any(|w| w.contains("carts cannot keep up")), "{:?}", plan.warnings);
}

fn specs() -> Vec<MachineSpec> {
    let spec = |d: &str, role, capacity_kg| MachineSpec {
        device: id(d),
        role,
        capacity_kg,
        unload_kg_s: 103.0,
        speed_empty_kmh: 15.0,
        speed_loaded_kmh: 10.0,
        load_from: None,
    };
    vec![
        spec("combine-1", Role::Combine, 10_900.0),
        MachineSpec {
            load_from: Some((id("cart-1-scale"), "weight_kg".into())),
            ..spec("cart-1", Role::Cart, 30_000.0)
        },
        spec("truck-1", Role::Truck, 25_000.0),
    ]
}

#[test]
fn tracker_builds_the_fleet_from_readings_and_leaves_silent_machines_out() {
    let origin = GeoOrigin { lat: 52.0, lon: 10.0 };
    let mut tracker = Tracker::new(specs(), Some(origin), Duration::from_secs(60), 20.0);
    let (lat, lon) = origin.to_geo(Position::new(300.0, 400.0));
    let c = id("combine-1");
    tracker.observe(&c, "lat", t(0), lat);
    tracker.observe(&c, "lon", t(0), lon);
    tracker.observe(&c, "fill_kg", t(0), 5_000.0);
    tracker.observe(&c, "state", t(0), combine_state::HARVESTING);
    for (i, flow) in [10.0, 10.0, 20.0].into_iter().enumerate() {
        tracker.observe(&c, "mass_flow_kg_s", t(i as i64 * 5), flow);
    }
    // An older message does not move the combine back.
    tracker.observe(&c, "fill_kg", t(-10), 1_000.0);
    // The cart's load comes from its scale; its own fill_kg is ignored.
    tracker.observe(&id("cart-1"), "state", t(0), cart_state::IDLE);
    tracker.observe(&id("cart-1"), "fill_kg", t(0), 99.0);
    tracker.observe(&id("cart-1-scale"), "weight_kg", t(1), 7_000.0);
    tracker.observe(&id("truck-1"), "state", t(-120), truck_state::STAGING);

    let state = tracker.fleet(t(10));
    let combine = &state.combines[0];
    assert!((combine.pos.x_m - 300.0).abs() < 0.01 && (combine.pos.y_m - 400.0).abs() < 0.01, "{combine:?}");
    assert_eq!(combine.fill_kg, 5_000.0);
    assert!((combine.fill_rate_kg_s - 13.0).abs() < 1e-9, "10, 10, then 20 smoothed: {combine:?}");
    assert_eq!(state.carts[0].load_kg, 7_000.0);
    assert!(state.trucks.is_empty());
    assert_eq!(state.silent, vec![(id("truck-1"), Some(t(-120)))]);
    let plan = Dispatcher::default().plan(&state, t(10));
    assert!(plan.warnings.iter().any(|w| w.starts_with("truck-1 silent for 130 s")), "{:?}", plan.warnings);
}

#[test]
fn predicted_full_time_follows_the_fill_rate() {
    let c = combine("combine-1", 0.0, 0.0, 600.0);
    let full = c.full_at(t(0)).expect("filling");
    assert!((secs_between(t(0), full) - 600.0).abs() < 0.01);
    let waiting = Combine { activity: CombineActivity::WaitingFull, ..c.clone() };
    assert_eq!(waiting.full_at(t(7)), Some(t(7)));
    let done = Combine { activity: CombineActivity::Done, ..c };
    assert_eq!(done.full_at(t(0)), None);
}
