// Money is integer cents end to end; these only turn it into text.

const grouping = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

/** 123456 → "$1,234.56"; negative amounts get a minus sign. */
export function money(cents) {
  if (cents === null || cents === undefined || !Number.isFinite(cents)) return "—";
  const sign = cents < 0 ? "−" : "";
  const abs = Math.abs(Math.trunc(cents));
  const whole = Math.trunc(abs / 100);
  const fraction = String(abs % 100).padStart(2, "0");
  return `${sign}$${grouping.format(whole)}.${fraction}`;
}

/** A signed amount: "+$1.20" / "−$0.40" / "$0.00". */
export function signedMoney(cents) {
  if (cents > 0) return `+${money(cents)}`;
  return money(cents);
}

/** Change from `from` to `to` as a percentage with two decimals. */
export function percentChange(from, to) {
  if (!from) return "0.00%";
  // Basis points in integers, then text: no float money.
  const basisPoints = Math.trunc(((to - from) * 10000) / from);
  const sign = basisPoints > 0 ? "+" : basisPoints < 0 ? "−" : "";
  const abs = Math.abs(basisPoints);
  return `${sign}${Math.trunc(abs / 100)}.${String(abs % 100).padStart(2, "0")}%`;
}

/** Direction class of a change. */
export function direction(delta) {
  return delta > 0 ? "up" : delta < 0 ? "down" : "";
}

/** Seconds left until an instant (ms), never negative. */
export function secondsUntil(ms) {
  return Math.max(0, Math.ceil((ms - Date.now()) / 1000));
}

/** "1:05" for 65 s; "2:03:04" past an hour. */
export function countdown(seconds) {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

/** A wall-clock time, "15:04:05". */
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

const kindNames = {
  goal: "Goal", assist: "Assist", shot_on_target: "Shot on target", shot_off_target: "Shot off target",
  save: "Save", yellow_card: "Yellow card", red_card: "Red card", own_goal: "Own goal",
  penalty_missed: "Penalty missed", penalty_saved: "Penalty saved", substituted_on: "Subbed on",
  substituted_off: "Subbed off", clean_sheet: "Clean sheet",
};

/** "yellow_card" → "Yellow card". */
export function eventKind(kind) {
  return kindNames[kind] ?? String(kind).replaceAll("_", " ");
}
