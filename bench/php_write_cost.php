<?php
// Cost per event of logstore_tsdb's write() + flush, measured with php-cli on the real store.php.
//
// Usage: php bench/php_write_cost.php [--events=100000] [--repeat=5] [--dir=SPOOLDIR] [--flush=1,10,50,500]
//
// For each flush-every value N: a fresh store (one "request") writes --events pre-built events, flushing every
// N events and at dispose(); the time of write() for all events plus dispose() is divided by the number of
// events. The median of --repeat runs is reported, with the cost of only encoding the line (get_data,
// the extra fields, json_encode) as a reference. Events are built before timing: creating them is Moodle's
// cost whatever the store. The spool file is deleted between runs. Default directory: the system temp dir;
// pass --dir on the disk the spool will really use. A last row times whole requests (new store, 3 events,
// dispose): what one page view pays. The last output line is the same figures as JSON.

require_once(__DIR__ . '/../moodle/logstore_tsdb/tests/harness.php');

$options = getopt('', ['events:', 'repeat:', 'dir:', 'flush:']);
$events = (int)($options['events'] ?? 100000);
$repeat = max(1, (int)($options['repeat'] ?? 5));
$flushes = array_map('intval', explode(',', $options['flush'] ?? '1,10,50,500'));
$dir = $options['dir'] ?? (sys_get_temp_dir() . '/logstore_tsdb_bench_' . getmypid());
$ownDir = !isset($options['dir']);
if ($ownDir) {
    mkdir($dir, 0700, true);
}

// Pre-built events with realistic content (about 400 bytes a line, as course_module_viewed is).
$list = [];
for ($i = 0; $i < $events; $i++) {
    $list[] = harness_event(['objectid' => $i, 'userid' => 100 + $i % 1000,
        'other' => ($i % 4 === 0) ? ['instanceid' => $i, 'forumtype' => 'general'] : null]);
}
$GLOBALS['USER'] = (object)['id' => 100];
$GLOBALS['PAGE'] = (object)['requestorigin' => 'web', 'requestip' => '192.0.2.10'];

/**
 * Median of a list of numbers.
 *
 * @param array $values
 * @return float
 */
function median(array $values) {
    sort($values);
    $n = count($values);
    return $n % 2 ? $values[intdiv($n, 2)] : ($values[$n / 2 - 1] + $values[$n / 2]) / 2;
}

// Reference: encoding only, as store::write() does it, without buffering or I/O.
$encode = [];
for ($r = 0; $r < $repeat; $r++) {
    $t = hrtime(true);
    $buffer = '';
    foreach ($list as $event) {
        $entry = $event->get_data();
        $entry['origin'] = $GLOBALS['PAGE']->requestorigin;
        $entry['ip'] = $GLOBALS['PAGE']->requestip;
        $entry['realuserid'] = \core\session\manager::is_loggedinas() ? 2 : null;
        $entry['timecreated_us'] = (int)(microtime(true) * 1000000);
        $buffer .= json_encode($entry, \logstore_tsdb\log\store::JSON_FLAGS) . "\n";
    }
    $encode[] = (hrtime(true) - $t) / 1000 / $events;
}
$bytes = strlen($buffer) / $events;
unset($buffer);

$fs = trim((string)shell_exec('df -T ' . escapeshellarg($dir) . ' 2>/dev/null | awk \'NR==2 {print $2}\''));
printf("logstore_tsdb write()+flush cost, php %s, %d events x %d runs (median), spool %s (%s), %.0f bytes/line\n",
    PHP_VERSION, $events, $repeat, $dir, $fs ?: '?', $bytes);
printf("  %-22s %10s %12s\n", 'flush every N events', 'us/event', 'us/flush');
printf("  %-22s %10.2f %12s\n", 'encode only (ref.)', median($encode), '-');

$results = ['php' => PHP_VERSION, 'events' => $events, 'bytes_per_line' => round($bytes),
    'encode_only_us' => round(median($encode), 3)];
foreach ($flushes as $n) {
    $runs = [];
    for ($r = 0; $r < $repeat; $r++) {
        $store = harness_store(['spooldir' => $dir, 'flushevery' => $n, 'hostname' => 'bench']);
        $path = $store->get_spool_path();
        @unlink($path);
        $t = hrtime(true);
        foreach ($list as $event) {
            $store->write($event);
        }
        $store->dispose();
        $runs[] = (hrtime(true) - $t) / 1000 / $events;
        if ($GLOBALS['HARNESS_DEBUGGING']) {
            fwrite(STDERR, "write failed: " . $GLOBALS['HARNESS_DEBUGGING'][0] . "\n");
            exit(1);
        }
        clearstatcache();
        $lines = substr_count(file_get_contents($path), "\n");
        if ($lines !== $events) {
            fwrite(STDERR, "expected {$events} lines, found {$lines}\n");
            exit(1);
        }
        unlink($path);
    }
    $us = median($runs);
    $perflush = ($us - median($encode)) * $n;
    printf("  %-22d %10.2f %12.1f\n", $n, $us, max(0, $perflush));
    $results["flush_{$n}_us"] = round($us, 3);
}

// A typical web request: a new store, 3 events, dispose() (one flush): the cost the user's request pays.
$perrequest = 3;
$requests = intdiv($events, $perrequest);
$runs = [];
for ($r = 0; $r < $repeat; $r++) {
    $t = hrtime(true);
    for ($q = 0; $q < $requests; $q++) {
        $store = harness_store(['spooldir' => $dir, 'hostname' => 'bench']);
        for ($k = 0; $k < $perrequest; $k++) {
            $store->write($list[$q * $perrequest + $k]);
        }
        $store->dispose();
    }
    $runs[] = (hrtime(true) - $t) / 1000 / $requests;
    @unlink($store->get_spool_path());
}
printf("  %-22s %10.2f %12s   (%d requests of %d events: store created, events written, dispose)\n",
    'per request', median($runs) / $perrequest, sprintf('%.1f/req', median($runs)), $requests, $perrequest);
$results['request_3_events_us'] = round(median($runs), 3);

if ($ownDir) {
    @rmdir($dir);
}
echo json_encode($results), "\n";
