<?php
// This file is part of Moodle - https://moodle.org/
//
// Moodle is free software: you can redistribute it and/or modify
// it under the terms of the GNU General Public License as published by
// the Free Software Foundation, either version 3 of the License, or
// (at your option) any later version.
//
// Moodle is distributed in the hope that it will be useful,
// but WITHOUT ANY WARRANTY; without even the implied warranty of
// MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
// GNU General Public License for more details.
//
// You should have received a copy of the GNU General Public License
// along with Moodle.  If not, see <https://www.gnu.org/licenses/>.

/**
 * Minimal stand-ins for the Moodle API the store touches, so that the real classes/log/store.php runs
 * unchanged under plain php-cli (no Moodle install, no PHPUnit).
 *
 * Not loaded by Moodle: only by tests/run_tests.php, tests/emit_events.php and the benchmark.
 *
 * Stubbed: MOODLE_INTERNAL, CLI_SCRIPT (false: a web request), PHPUNIT_TEST, DEBUG_NORMAL,
 * \core\event\base (get_data() and property access), \tool_log\log\{store,writer,manager},
 * \core\session\manager (is_loggedinas, get_realuser), get_config, debugging, isloggedin, isguestuser,
 * $PAGE (requestorigin, requestip), $USER, $CFG (siteguest).
 *
 * @package    logstore_tsdb
 * @copyright  2025 moodle-tsdb-shipper contributors
 * @license    https://www.gnu.org/copyleft/gpl.html GNU GPL v3 or later
 */

namespace core\event {
    /**
     * Stand-in for \core\event\base: holds the 17 fields of get_data().
     */
    abstract class base {
        /** @var array event data, as Moodle's base keeps it */
        protected $data = [];

        /**
         * Build an event from its data (Moodle uses create(); the store never calls it).
         *
         * @param array $data
         * @return static
         */
        public static function harness_create(array $data) {
            $event = new static();
            $event->data = $data;
            return $event;
        }

        /**
         * The event's data, as Moodle returns it.
         *
         * @return array
         */
        final public function get_data() {
            return $this->data;
        }

        /**
         * Read-only access to the data, as Moodle's magic getter gives it.
         *
         * @param string $name
         * @return mixed
         */
        public function __get($name) {
            if (array_key_exists($name, $this->data)) {
                return $this->data[$name];
            }
            throw new \RuntimeException("event property {$name} does not exist");
        }
    }

    /**
     * A concrete event for the tests.
     */
    class harness_event extends base {
    }
}

namespace tool_log\log {
    /**
     * Stand-in for tool_log's store interface.
     */
    interface store {
        /**
         * @param manager $manager
         */
        public function __construct(\tool_log\log\manager $manager);

        /**
         * @return void
         */
        public function dispose();
    }

    /**
     * Stand-in for tool_log's writer interface: the exact signature the store must implement.
     */
    interface writer extends store {
        /**
         * @param \core\event\base $event
         * @return void
         */
        public function write(\core\event\base $event);
    }

    /**
     * Stand-in for tool_log's log manager.
     */
    class manager {
    }
}

namespace core\session {
    /**
     * Stand-in for the session manager: 'login as' is on when $USER->realuser is set.
     */
    class manager {
        /**
         * @return bool
         */
        public static function is_loggedinas() {
            return !empty($GLOBALS['USER']->realuser);
        }

        /**
         * @return \stdClass
         */
        public static function get_realuser() {
            $user = $GLOBALS['USER'];
            return (object)['id' => empty($user->realuser) ? $user->id : $user->realuser];
        }
    }
}

namespace {
    define('MOODLE_INTERNAL', true);
    define('CLI_SCRIPT', false);
    define('PHPUNIT_TEST', false);
    define('DEBUG_NORMAL', 15);

    /** @var array settings of logstore_tsdb returned by get_config() */
    $GLOBALS['HARNESS_CONFIG'] = [];
    /** @var array messages passed to debugging() */
    $GLOBALS['HARNESS_DEBUGGING'] = [];

    $GLOBALS['CFG'] = (object)['siteguest' => 1];
    $GLOBALS['USER'] = (object)['id' => 2];
    $GLOBALS['PAGE'] = (object)['requestorigin' => 'web', 'requestip' => '192.0.2.10'];

    /**
     * Plugin settings, from $GLOBALS['HARNESS_CONFIG'].
     *
     * @param string $plugin
     * @param string|null $name
     * @return mixed
     */
    function get_config($plugin, $name = null) {
        if ($plugin !== 'logstore_tsdb') {
            return $name === null ? new stdClass() : false;
        }
        $config = $GLOBALS['HARNESS_CONFIG'];
        if ($name === null) {
            return (object)$config;
        }
        return array_key_exists($name, $config) ? $config[$name] : false;
    }

    /**
     * Records the message.
     *
     * @param string $message
     * @param int $level
     * @return bool
     */
    function debugging($message = '', $level = DEBUG_NORMAL) {
        $GLOBALS['HARNESS_DEBUGGING'][] = $message;
        return true;
    }

    /**
     * @return bool
     */
    function isloggedin() {
        return !empty($GLOBALS['USER']->id);
    }

    /**
     * @return bool
     */
    function isguestuser() {
        return !empty($GLOBALS['USER']->id) && $GLOBALS['USER']->id == $GLOBALS['CFG']->siteguest;
    }

    require_once(__DIR__ . '/../classes/log/store.php');

    /** The 17 keys of \core\event\base::get_data(), in Moodle's order. */
    const HARNESS_EVENT_KEYS = ['eventname', 'component', 'action', 'target', 'objecttable', 'objectid', 'crud',
        'edulevel', 'contextid', 'contextlevel', 'contextinstanceid', 'userid', 'courseid', 'relateduserid',
        'anonymous', 'other', 'timecreated'];

    /**
     * Reset the simulated request and return a new store with these settings.
     *
     * @param array $config logstore_tsdb settings
     * @return \logstore_tsdb\log\store
     */
    function harness_store(array $config) {
        $GLOBALS['HARNESS_CONFIG'] = $config;
        $GLOBALS['HARNESS_DEBUGGING'] = [];
        return new \logstore_tsdb\log\store(new \tool_log\log\manager());
    }

    /**
     * Event data as a course module view would give it, with overrides.
     *
     * @param array $overrides
     * @return array
     */
    function harness_event_data(array $overrides = []) {
        return array_merge([
            'eventname' => '\\mod_page\\event\\course_module_viewed',
            'component' => 'mod_page',
            'action' => 'viewed',
            'target' => 'course_module',
            'objecttable' => 'page',
            'objectid' => 7,
            'crud' => 'r',
            'edulevel' => 2,
            'contextid' => 42,
            'contextlevel' => 70,
            'contextinstanceid' => 11,
            'userid' => 2,
            'courseid' => 3,
            'relateduserid' => null,
            'anonymous' => 0,
            'other' => null,
            'timecreated' => time(),
        ], $overrides);
    }

    /**
     * A new event.
     *
     * @param array $overrides
     * @return \core\event\base
     */
    function harness_event(array $overrides = []) {
        return \core\event\harness_event::harness_create(harness_event_data($overrides));
    }

    /**
     * Event number $seq of emitter $worker: deterministic, varied content (see emit_events.php).
     *
     * Sets the simulated request ($USER, $PAGE) for the event too.
     *
     * @param int $worker
     * @param int $seq
     * @return \core\event\base
     */
    function harness_emitted_event($worker, $seq) {
        $GLOBALS['USER'] = (object)['id' => 100 + $seq % 50];
        $GLOBALS['PAGE'] = (object)['requestorigin' => 'web', 'requestip' => '192.0.2.' . ($seq % 250 + 1)];
        $other = ['emit' => "{$worker}:{$seq}"];
        $overrides = ['objectid' => $worker * 1000000 + $seq, 'userid' => 100 + $seq % 50];
        switch ($seq % 10) {
            case 1:
                // Anonymous event (e.g. an anonymous forum post or feedback).
                $overrides['anonymous'] = 1;
                $overrides['eventname'] = '\\mod_feedback\\event\\response_submitted';
                $overrides['component'] = 'mod_feedback';
                $overrides['action'] = 'submitted';
                $overrides['target'] = 'response';
                $overrides['crud'] = 'c';
                $overrides['edulevel'] = 2;
                break;
            case 2:
                // Admin 2 logged in as the user.
                $GLOBALS['USER']->realuser = 2;
                $overrides['relateduserid'] = 100 + ($seq + 1) % 50;
                break;
            case 3:
                $other['text'] = "ünïcødé / ✓ \"quoted\" \\ back\tslash";
                break;
            case 4:
                $other['bad'] = "invalid \xff\xfe utf-8";
                break;
            case 5:
                $GLOBALS['PAGE'] = (object)['requestorigin' => 'cli', 'requestip' => null];
                break;
            case 6:
                $GLOBALS['PAGE'] = (object)['requestorigin' => 'ws', 'requestip' => '2001:db8::' . dechex($seq % 65535)];
                break;
            case 7:
                $other['nested'] = ['a' => [1, 2, 3], 'b' => ['c' => true, 'd' => 1.5]];
                break;
            case 8:
                // Moodle often hands ids over as strings.
                $overrides['courseid'] = (string)(3 + $seq % 5);
                $overrides['contextinstanceid'] = (string)(11 + $seq % 5);
                break;
            case 9:
                $other = "{$worker}:{$seq}";
                break;
        }
        $overrides['other'] = $other;
        return harness_event($overrides);
    }
}
